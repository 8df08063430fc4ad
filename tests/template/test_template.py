"""Properties of template.yaml that a later edit must not quietly drop.

Run by scripts/lint-template.sh inside its cfn-lint venv. The template is read with cfn-lint's
own decoder, which turns CloudFormation short tags (!Ref, !GetAtt, !Sub, !If) into the
intrinsic-function dicts CloudFormation sees ({"Ref": ...}); a plain YAML loader rejects them.
RELAY_TEMPLATE points the test at another file (used to prove it fails on a mutated copy).
"""

import os
import re
import tomllib
import unittest

from cfnlint.decode import decode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.environ.get("RELAY_TEMPLATE", os.path.join(ROOT, "template.yaml"))

FAMILIES = ["deal", "lead", "contact", "company", "requisite", "invoice", "document", "activity", "app"]
# Settings that hold a secret: a function may get only their SSM name (RELAY_<NAME>_PARAM).
SECRET_SETTINGS = {
    "RELAY_B24_APP_TOKENS",
    "RELAY_SALESMAN_SECRET",
    "RELAY_B24_WEBHOOK_URL",
    "RELAY_B24_CLIENT_SECRET",
    "RELAY_SALESMAN_APIKEY",
    "RELAY_SIGNING_SECRET",
}
SECRET_HINT = re.compile(r"secret|token|apikey|api_key|password|passwd|credential|webhookurl", re.I)


def load_template(path):
    template, errors = decode(path)
    if errors or template is None:
        raise AssertionError(f"{path} does not decode: {[str(e) for e in errors]}")
    return template


class TemplateTest(unittest.TestCase):
    template_path = TEMPLATE

    @classmethod
    def setUpClass(cls):
        cls.t = load_template(cls.template_path)
        cls.resources = cls.t["Resources"]
        cls.parameters = cls.t.get("Parameters", {})
        cls.globals = cls.t.get("Globals", {}).get("Function", {})

    # ------------------------------------------------------------------ helpers
    def resource(self, logical_id, type_):
        self.assertIn(logical_id, self.resources, f"resource {logical_id} is missing")
        res = self.resources[logical_id]
        self.assertEqual(res["Type"], type_, f"{logical_id} is not a {type_}")
        return res.get("Properties", {})

    def function_setting(self, props, name):
        """A function property, falling back to Globals as SAM does."""
        return props[name] if name in props else self.globals.get(name)

    def lowest_number(self, value, what):
        """The smallest value a property can take: a literal, or a parameter's Default and
        MinValue (a parameter without MinValue could be set to anything)."""
        if isinstance(value, dict) and "Ref" in value:
            param = self.parameters.get(value["Ref"])
            self.assertIsNotNone(param, f"{what} refers to unknown parameter {value['Ref']}")
            self.assertIn("MinValue", param, f"{what}: parameter {value['Ref']} has no MinValue")
            self.assertIn("Default", param, f"{what}: parameter {value['Ref']} has no Default")
            return min(int(param["MinValue"]), int(param["Default"]))
        return int(value)

    def functions(self):
        return {
            lid: res.get("Properties", {})
            for lid, res in self.resources.items()
            if res["Type"] == "AWS::Serverless::Function"
        }

    def function_by_code(self, code_uri):
        found = [lid for lid, p in self.functions().items() if p.get("CodeUri") == code_uri]
        self.assertEqual(len(found), 1, f"expected exactly one function with CodeUri {code_uri}, got {found}")
        return found[0], self.functions()[found[0]]

    # ------------------------------------------------------------------ queue and DLQ
    def test_queue_and_dead_letter_queue_are_fifo_with_envelope_dedup(self):
        queue = self.resource("RelayQueue", "AWS::SQS::Queue")
        dlq = self.resource("DeadLetterQueue", "AWS::SQS::Queue")
        self.assertIs(queue.get("FifoQueue"), True)
        self.assertIs(dlq.get("FifoQueue"), True)
        # The envelope id is the deduplication id; content-based dedup would merge distinct
        # events whose bodies happen to match and ignore the id ingress computed.
        self.assertIs(queue.get("ContentBasedDeduplication"), False)

    def test_queue_redrives_to_the_dead_letter_queue_after_at_least_five_receives(self):
        redrive = self.resource("RelayQueue", "AWS::SQS::Queue").get("RedrivePolicy")
        self.assertIsNotNone(redrive, "RelayQueue has no RedrivePolicy")
        self.assertEqual(redrive["deadLetterTargetArn"], {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})
        self.assertGreaterEqual(self.lowest_number(redrive["maxReceiveCount"], "maxReceiveCount"), 5)

    def test_default_receive_count_gives_a_day_of_retries(self):
        # The consumer's schedule (5 s doubling, at most 1 h, top-quarter jitter) needs 42
        # receives for its last try to come at least 24 h after the first
        # (forward::DEFAULT_MAX_RECEIVE_COUNT, checked by a unit test there).
        default = self.parameters["MaxReceiveCount"]["Default"]
        self.assertGreaterEqual(int(default), 42)

    def test_visibility_timeout_is_at_least_six_consumer_timeouts(self):
        lid, consumer = self.function_by_code("functions/consumer")
        timeout = self.function_setting(consumer, "Timeout")
        self.assertIsNotNone(timeout, f"{lid} has no Timeout")
        visibility = self.resource("RelayQueue", "AWS::SQS::Queue").get("VisibilityTimeout")
        self.assertIsNotNone(visibility, "RelayQueue has no VisibilityTimeout (default 30 s)")
        self.assertGreaterEqual(int(visibility), 6 * int(timeout))

    def test_consumer_reads_the_queue_with_partial_batch_failures_and_bounded_concurrency(self):
        lid, consumer = self.function_by_code("functions/consumer")
        sqs_events = [e["Properties"] for e in consumer.get("Events", {}).values() if e.get("Type") == "SQS"]
        self.assertEqual(len(sqs_events), 1, f"{lid} must have exactly one SQS event source")
        source = sqs_events[0]
        self.assertEqual(source["Queue"], {"Fn::GetAtt": ["RelayQueue", "Arn"]})
        self.assertIn("ReportBatchItemFailures", source.get("FunctionResponseTypes", []))
        self.assertIn("MaximumConcurrency", source.get("ScalingConfig", {}))
        self.assertIn("BatchSize", source)
        self.assertNotIn("MaximumBatchingWindowInSeconds", source, "FIFO sources take no batching window")

    # ------------------------------------------------------------------ table
    def test_table_is_on_demand_with_pk_sk_ttl_and_point_in_time_recovery(self):
        tables = [lid for lid, r in self.resources.items() if r["Type"] == "AWS::DynamoDB::Table"]
        self.assertEqual(tables, ["RelayTable"], "exactly one DynamoDB table")
        table = self.resource("RelayTable", "AWS::DynamoDB::Table")
        self.assertEqual(table.get("BillingMode"), "PAY_PER_REQUEST")
        keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
        self.assertEqual(keys, {"pk": "HASH", "sk": "RANGE"})
        ttl = table.get("TimeToLiveSpecification", {})
        self.assertEqual(ttl.get("AttributeName"), "expires_at")
        self.assertIs(ttl.get("Enabled"), True)
        pitr = table.get("PointInTimeRecoverySpecification", {})
        self.assertIs(pitr.get("PointInTimeRecoveryEnabled"), True)

    # ------------------------------------------------------------------ functions
    def test_every_family_has_one_public_function_url_and_its_output(self):
        outputs = self.t.get("Outputs", {})
        for family in FAMILIES:
            with self.subTest(family=family):
                lid, props = self.function_by_code(f"functions/ingest-{family}")
                self.assertEqual(props.get("FunctionUrlConfig", {}).get("AuthType"), "NONE")
                output = outputs.get(f"{family.capitalize()}IngestUrl")
                self.assertIsNotNone(output, f"output {family.capitalize()}IngestUrl is missing")
                self.assertEqual(output["Value"], {"Fn::GetAtt": [f"{lid}Url", "FunctionUrl"]})
                self.assertIn("ReservedConcurrentExecutions", props)
        with_url = sorted(lid for lid, p in self.functions().items() if "FunctionUrlConfig" in p)
        self.assertEqual(len(with_url), len(FAMILIES), f"only ingest functions have URLs: {with_url}")

    def test_every_function_is_a_rust_bootstrap_on_al2023_built_by_cargo_lambda(self):
        self.assertEqual(self.globals.get("Runtime"), "provided.al2023")
        self.assertEqual(self.globals.get("Handler"), "bootstrap")
        self.assertEqual(self.globals.get("Architectures"), [{"Ref": "Architecture"}])
        self.assertEqual(self.globals.get("LoggingConfig", {}).get("LogFormat"), "JSON")
        self.assertIn("Tracing", self.globals)
        for lid, res in self.resources.items():
            if res["Type"] != "AWS::Serverless::Function":
                continue
            with self.subTest(function=lid):
                self.assertEqual(res.get("Metadata", {}).get("BuildMethod"), "rust-cargolambda")
                props = res["Properties"]
                for name in ("Runtime", "Handler", "Architectures"):
                    self.assertNotIn(name, props, f"{lid} overrides Globals.{name}")

    def test_architecture_is_a_parameter_defaulting_to_arm64(self):
        arch = self.parameters.get("Architecture")
        self.assertIsNotNone(arch)
        self.assertEqual(arch.get("Default"), "arm64")
        self.assertEqual(sorted(arch.get("AllowedValues", [])), ["arm64", "x86_64"])

    def test_offline_poller_runs_on_a_schedule_from_a_parameter(self):
        lid, poller = self.function_by_code("functions/offline-poller")
        schedules = [e["Properties"] for e in poller.get("Events", {}).values() if e.get("Type") == "Schedule"]
        self.assertEqual(len(schedules), 1, f"{lid} needs one Schedule event")
        ref = schedules[0]["Schedule"]
        self.assertIsInstance(ref, dict)
        self.assertIn(ref.get("Ref"), self.parameters)

    # ------------------------------------------------------------------ secrets and IAM
    def test_no_secret_parameter_has_a_plain_default(self):
        hinted = [name for name in self.parameters if SECRET_HINT.search(name)]
        self.assertGreaterEqual(len(hinted), 6, f"secret parameters not found: {hinted}")
        for name in hinted:
            with self.subTest(parameter=name):
                default = str(self.parameters[name].get("Default", ""))
                # Only an SSM parameter name (or nothing) may be a default, never a value.
                self.assertTrue(
                    default == "" or re.fullmatch(r"/[A-Za-z0-9_./-]+", default),
                    f"{name} has a default that is not an SSM parameter name",
                )

    def test_the_bitrix24_client_id_has_no_empty_default(self):
        # App mode confirms installs with app.info against this id; it must be given.
        param = self.parameters["Bitrix24ClientId"]
        self.assertNotIn("Default", param)
        self.assertGreaterEqual(int(param.get("MinLength", 0)), 1)

    def test_functions_get_secret_names_never_secret_values(self):
        for lid, props in self.functions().items():
            variables = dict(self.globals.get("Environment", {}).get("Variables", {}))
            variables.update(props.get("Environment", {}).get("Variables", {}))
            with self.subTest(function=lid):
                self.assertFalse(SECRET_SETTINGS & set(variables), f"{lid} sets a secret in plain text")

    def test_each_role_reads_exactly_the_ssm_parameters_its_functions_name(self):
        by_role = {}
        for lid, props in self.functions().items():
            role = props.get("Role")
            self.assertIsInstance(role, dict, f"{lid} must use an explicit least-privilege role")
            role_id = role["Fn::GetAtt"][0]
            refs = {
                v["Ref"]
                for k, v in props.get("Environment", {}).get("Variables", {}).items()
                if k.endswith("_PARAM") and isinstance(v, dict)
            }
            by_role.setdefault(role_id, set()).update(refs)
        for role_id, wanted in by_role.items():
            with self.subTest(role=role_id):
                granted = set()
                role = self.resource(role_id, "AWS::IAM::Role")
                for policy in role.get("Policies", []):
                    for stmt in policy["PolicyDocument"]["Statement"]:
                        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                        if not any(a.startswith("ssm:") for a in actions):
                            continue
                        self.assertNotEqual(stmt["Resource"], "*", f"{role_id} reads every SSM parameter")
                        for res in stmt["Resource"]:
                            granted.update(re.findall(r"parameter\$\{(\w+)\}", res["Fn::Sub"]))
                self.assertEqual(granted, wanted)

    def test_only_the_consumer_may_park_in_the_dead_letter_queue(self):
        dlq = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
        for lid, res in self.resources.items():
            if res["Type"] != "AWS::IAM::Role":
                continue
            statements = [s for p in res["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
            touches = any(s["Resource"] == dlq or (isinstance(s["Resource"], list) and dlq in s["Resource"]) for s in statements)
            with self.subTest(role=lid):
                self.assertEqual(touches, lid == "ConsumerRole")
        consumer = self.resource("ConsumerRole", "AWS::IAM::Role")
        actions = {
            a
            for p in consumer["Policies"]
            for s in p["PolicyDocument"]["Statement"]
            for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
        }
        self.assertIn("sqs:ChangeMessageVisibility", actions)
        self.assertIn("sqs:SendMessage", actions)

    def test_ingest_functions_only_enqueue_and_read_portal_tokens(self):
        role = self.resource("IngestRole", "AWS::IAM::Role")
        statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        by_action = {}
        for stmt in statements:
            for action in stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]:
                by_action[action] = stmt
        self.assertEqual(
            set(by_action),
            {"sqs:SendMessage", "dynamodb:GetItem", "ssm:GetParameters", "ssm:GetParameter"},
        )
        self.assertEqual(by_action["sqs:SendMessage"]["Resource"], {"Fn::GetAtt": ["RelayQueue", "Arn"]})
        lookup = by_action["dynamodb:GetItem"]
        self.assertEqual(lookup["Condition"], {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["PORTALS"]}})
        for family in FAMILIES:
            lid, props = self.function_by_code(f"functions/ingest-{family}")
            expected = "AppIngestRole" if family == "app" else "IngestRole"
            self.assertEqual(props["Role"], {"Fn::GetAtt": [expected, "Arn"]}, lid)

    def table_statements(self):
        """(role, statement) for every Allow statement of every role that names the table."""
        for lid, res in self.resources.items():
            if res["Type"] != "AWS::IAM::Role":
                continue
            for policy in res["Properties"].get("Policies", []):
                for stmt in policy["PolicyDocument"]["Statement"]:
                    actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                    if stmt.get("Effect") == "Allow" and any(a.lower().startswith("dynamodb:") or a == "*" for a in actions):
                        yield lid, stmt, actions

    def test_no_role_may_scan_the_table(self):
        # Every read is a GetItem or a Query on one partition; a Scan reads (and bills) the
        # whole table, and the poller's would grow with every event ever relayed.
        import fnmatch
        for lid, _, actions in self.table_statements():
            for action in actions:
                self.assertFalse(
                    fnmatch.fnmatch("dynamodb:scan", action.lower()) or action == "*",
                    f"{lid} allows {action}, which includes dynamodb:Scan",
                )

    def test_every_table_permission_is_bounded_by_leading_keys(self):
        for lid, stmt, _ in self.table_statements():
            conditions = stmt.get("Condition", {})
            keys = [v.get("dynamodb:LeadingKeys") for v in conditions.values() if isinstance(v, dict)]
            self.assertTrue(any(keys), f"{lid} {stmt.get('Sid')} reaches every partition of the table")
            self.assertTrue(
                all(k.startswith("ForAllValues:") for k in conditions),
                f"{lid} {stmt.get('Sid')}: LeadingKeys needs ForAllValues",
            )

    def test_snapshots_expire_through_the_table_ttl_by_default(self):
        # The consumer writes each snapshot's expires_at (RELAY_SNAPSHOT_TTL_DAYS after its last
        # change); the table's TTL on that attribute deletes it.
        _, consumer = self.function_by_code("functions/consumer")
        env = consumer["Environment"]["Variables"]
        self.assertEqual(env.get("RELAY_SNAPSHOT_TTL_DAYS"), {"Ref": "SnapshotTtlDays"})
        self.assertGreater(int(self.parameters["SnapshotTtlDays"]["Default"]), 0)

    def test_consumer_may_extend_its_claim(self):
        # The heartbeat moves a claim's lease with one conditional UpdateItem.
        actions = {a for lid, _, acts in self.table_statements() if lid == "ConsumerRole" for a in acts}
        self.assertIn("dynamodb:UpdateItem", actions)

    # ------------------------------------------------------------------ alarms
    def alarm(self, logical_id):
        return self.resource(logical_id, "AWS::CloudWatch::Alarm")

    def test_alarms_cover_dead_letters_ingress_5xx_consumer_errors_and_queue_age(self):
        dlq = self.alarm("DeadLetterQueueAlarm")
        self.assertEqual(dlq["MetricName"], "ApproximateNumberOfMessagesVisible")
        self.assertEqual(dlq["Dimensions"][0]["Value"], {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]})
        self.assertEqual((dlq["Threshold"], dlq["ComparisonOperator"]), (0, "GreaterThanThreshold"))

        ingress = self.alarm("IngressErrorsAlarm")
        watched = {
            m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"]
            for m in ingress["Metrics"]
            if "MetricStat" in m and m["MetricStat"]["Metric"]["MetricName"] == "Url5xxCount"
        }
        self.assertEqual(watched, {self.function_by_code(f"functions/ingest-{f}")[0] for f in FAMILIES})

        consumer = self.alarm("ConsumerErrorsAlarm")
        self.assertEqual(consumer["MetricName"], "Errors")
        self.assertEqual(consumer["Dimensions"][0]["Value"], {"Ref": "ConsumerFunction"})

        age = self.alarm("QueueAgeAlarm")
        self.assertEqual(age["MetricName"], "ApproximateAgeOfOldestMessage")

        for lid, res in self.resources.items():
            if res["Type"] == "AWS::CloudWatch::Alarm":
                with self.subTest(alarm=lid):
                    self.assertEqual(
                        res["Properties"].get("AlarmActions"),
                        {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]},
                    )

    # ------------------------------------------------------------------ cost and hardening
    def test_build_and_deploy_name_the_same_architecture(self):
        # A build for one architecture deployed as the other fails every invocation.
        with open(os.path.join(ROOT, "samconfig.toml"), "rb") as f:
            config = tomllib.load(f)["default"]
        build = config["build"]["parameters"].get("parameter_overrides", "")
        deploy = config["deploy"]["parameters"].get("parameter_overrides", "")
        arch = re.compile(r"Architecture=(\w+)")
        built, deployed = arch.search(build), arch.search(deploy)
        self.assertIsNotNone(built, "samconfig's build pins no Architecture")
        self.assertIsNotNone(deployed, "samconfig's deploy pins no Architecture")
        self.assertEqual(built.group(1), deployed.group(1), "samconfig builds one architecture, deploys another")
        self.assertIn(built.group(1), self.parameters["Architecture"]["AllowedValues"])

    def test_dead_letter_queue_accepts_only_the_relay_queue(self):
        queue = self.resource("RelayQueue", "AWS::SQS::Queue")
        dlq = self.resource("DeadLetterQueue", "AWS::SQS::Queue")
        allow = dlq.get("RedriveAllowPolicy", {})
        self.assertEqual(allow.get("redrivePermission"), "byQueue")
        name = queue.get("QueueName", {}).get("Fn::Sub")
        self.assertIsNotNone(name, "RelayQueue needs a fixed name for the allow policy to name it")
        sources = [s.get("Fn::Sub") for s in allow.get("sourceQueueArns", [])]
        self.assertEqual(len(sources), 1)
        self.assertTrue(sources[0].endswith(":" + name), f"{sources[0]} is not RelayQueue ({name})")

    def test_queues_refuse_requests_without_tls(self):
        policies = [r["Properties"] for r in self.resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
        covered = set()
        for policy in policies:
            for statement in policy["PolicyDocument"]["Statement"]:
                insecure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
                if statement.get("Effect") == "Deny" and str(insecure).lower() == "false":
                    covered.update(q["Ref"] for q in policy["Queues"])
        self.assertEqual(covered, {"RelayQueue", "DeadLetterQueue"})

    def test_table_refuses_deletion(self):
        self.assertIs(self.resource("RelayTable", "AWS::DynamoDB::Table").get("DeletionProtectionEnabled"), True)

    def test_tracing_and_platform_logs_do_not_double_the_bill(self):
        self.assertEqual(self.parameters["TracingMode"]["Default"], "PassThrough")
        self.assertEqual(self.globals["LoggingConfig"]["SystemLogLevel"], "WARN")

    def test_ingest_throttles_and_rejected_bitrix24_tokens_raise_alarms(self):
        throttles = self.alarm("IngressThrottlesAlarm")
        watched = {
            m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"]
            for m in throttles["Metrics"]
            if "MetricStat" in m and m["MetricStat"]["Metric"]["MetricName"] == "Throttles"
        }
        self.assertEqual(watched, {self.function_by_code(f"functions/ingest-{f}")[0] for f in FAMILIES})

        rejected = self.alarm("Bitrix24TokenRejectedAlarm")
        filtered = {
            r["Properties"]["LogGroupName"]["Ref"]
            for r in self.resources.values()
            if r["Type"] == "AWS::Logs::MetricFilter"
            and r["Properties"]["MetricTransformations"][0]["MetricName"] == rejected["MetricName"]
            and "application_token rejected" in r["Properties"]["FilterPattern"]
        }
        ingest_groups = set()
        for f in FAMILIES:
            _, props = self.function_by_code(f"functions/ingest-{f}")
            ingest_groups.add(props["LoggingConfig"]["LogGroup"]["Ref"])
        self.assertEqual(filtered, ingest_groups)

    def test_route_outcomes_are_counted_per_route_and_shown_on_the_dashboard(self):
        _, consumer = self.function_by_code("functions/consumer")
        self.assertEqual(consumer["Environment"]["Variables"]["RELAY_ROUTES"], {"Ref": "Routes"})
        self.assertEqual(self.parameters["Routes"]["Default"], "")
        group = consumer["LoggingConfig"]["LogGroup"]
        per_route = {}
        for r in self.resources.values():
            if r["Type"] != "AWS::Logs::MetricFilter":
                continue
            props = r["Properties"]
            transform = props["MetricTransformations"][0]
            if '"route outcome"' not in props["FilterPattern"]:
                continue
            self.assertEqual(props["LogGroupName"], group)
            outcome = re.search(r'\$\.outcome = "(\w+)"', props["FilterPattern"]).group(1)
            self.assertEqual(transform.get("Dimensions"), [{"Key": "Route", "Value": "$.route"}])
            per_route[outcome] = transform["MetricName"]
        self.assertEqual(set(per_route), {"matched", "delivered", "failed"})
        body = self.resource("Dashboard", "AWS::CloudWatch::Dashboard")["DashboardBody"]["Fn::Sub"][0]
        for metric in per_route.values():
            self.assertIn(f'MetricName=\\"{metric}\\"', body, f"{metric} is not on the dashboard")

    def test_outputs_name_the_queue_dead_letter_queue_and_table(self):
        outputs = self.t.get("Outputs", {})
        for name in ("QueueName", "DeadLetterQueueName", "TableName"):
            self.assertIn(name, outputs)


if __name__ == "__main__":
    unittest.main()
