"""Proves the template test can fail: each mutation drops or weakens one property that
test_template.py guards, and the suite run on the mutated copy must report a failure.
A mutation whose text no longer occurs in template.yaml fails too, so the list keeps up
with the template."""

import os
import tempfile
import unittest

import test_template as guarded

# (what is dropped, text in template.yaml, replacement)
MUTATIONS = [
    ("FIFO queue", "      FifoQueue: true\n      # Ingress sets", "      FifoQueue: false\n      # Ingress sets"),
    ("envelope id as dedup id", "ContentBasedDeduplication: false\n      # High", "ContentBasedDeduplication: true\n      # High"),
    ("redrive to the DLQ", "deadLetterTargetArn: !GetAtt DeadLetterQueue.Arn", "deadLetterTargetArn: !GetAtt RelayQueue.Arn"),
    ("maxReceiveCount >= 5", "    Default: 42\n    MinValue: 5", "    Default: 42\n    MinValue: 3"),
    ("a day of retries by default", "    Default: 42\n    MinValue: 5", "    Default: 8\n    MinValue: 5"),
    ("visibility >= 6 x timeout", "VisibilityTimeout: 360", "VisibilityTimeout: 300"),
    ("ReportBatchItemFailures", "FunctionResponseTypes: [ReportBatchItemFailures]", "FunctionResponseTypes: []"),
    ("TTL on expires_at", "AttributeName: expires_at", "AttributeName: ttl"),
    ("point-in-time recovery", "PointInTimeRecoveryEnabled: true", "PointInTimeRecoveryEnabled: false"),
    ("public URL for deal (the first ingest function)", "        AuthType: NONE", "        AuthType: AWS_IAM"),
    ("deal URL output", "  DealIngestUrl:", "  DealUrl:"),
    ("arm64 default", "    Default: arm64", "    Default: x86_64"),
    ("no plain secret default", "Default: /crm-relay/signing-secret", "Default: whsec_c2VjcmV0"),
    ("no plain secret in env", "RELAY_SIGNING_SECRET_PARAM: !Ref", "RELAY_SIGNING_SECRET: !Ref"),
    # The first LeadingKeys condition in the file is the ingest role's.
    ("ingest reads only the PORTALS partition", 'dynamodb:LeadingKeys: ["PORTALS"]', 'dynamodb:LeadingKeys: ["*"]'),
    ("no Scan", "Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:Query]", "Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:Query, dynamodb:Scan]"),
    ("no Scan through a wildcard", "Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:Query]", "Action: [dynamodb:GetItem, dynamodb:PutItem, dynamodb:*]"),
    ("consumer's table calls bounded", 'dynamodb:LeadingKeys: ["DEDUP#*", "SNAP#*", "PORTALS", "ATTEMPT#*", "DEST#*"]', 'dynamodb:Attributes: ["pk", "sk"]'),
    ("snapshots expire by default", "    Default: 400\n    MinValue: 0", "    Default: 0\n    MinValue: 0"),
    ("consumer expires snapshots", "RELAY_SNAPSHOT_TTL_DAYS: !Ref SnapshotTtlDays", "RELAY_SNAPSHOT_TTL: !Ref SnapshotTtlDays"),
    ("consumer extends its lease", "dynamodb:PutItem, dynamodb:UpdateItem, dynamodb:DeleteItem", "dynamodb:PutItem, dynamodb:DeleteItem"),
    ("DLQ takes only the relay queue", "redrivePermission: byQueue", "redrivePermission: allowAll"),
    ("TLS-only queues", 'aws:SecureTransport: "false"', 'aws:SecureTransport: "true"'),
    ("table deletion protection", "DeletionProtectionEnabled: true", "DeletionProtectionEnabled: false"),
    ("no X-Ray by default", "    Default: PassThrough", "    Default: Active"),
    ("platform logs at WARN", "SystemLogLevel: WARN", "SystemLogLevel: INFO"),
    ("throttle alarm on deal", "                - {Name: FunctionName, Value: !Ref IngestDealFunction}\n        - Id: tlead",
     "                - {Name: FunctionName, Value: !Ref IngestLeadFunction}\n        - Id: tlead"),
    ("token-rejected filter on deal", "      LogGroupName: !Ref IngestDealLogGroup\n      FilterPattern: '{ $.message = \"application_token rejected\" }'",
     "      LogGroupName: !Ref IngestLeadLogGroup\n      FilterPattern: '{ $.message = \"application_token rejected\" }'"),
    ("per-route delivered metric", "&& $.outcome = \"delivered\" }'", "&& $.outcome = \"sent\" }'"),
    ("per-route failures on the dashboard", "MetricName=\\\"RouteFailed\\\"", "MetricName=\\\"RouteErrors\\\""),
    ("DLQ alarm", "        - {Name: QueueName, Value: !GetAtt DeadLetterQueue.QueueName}", "        - {Name: QueueName, Value: !GetAtt RelayQueue.QueueName}"),
]


class MutatedTemplateFails(unittest.TestCase):
    def test_every_mutation_is_caught(self):
        with open(guarded.TEMPLATE, encoding="utf-8") as f:
            original = f.read()
        for what, old, new in MUTATIONS:
            with self.subTest(mutation=what):
                self.assertTrue(old in original, f"mutation '{what}' no longer applies: update MUTATIONS")
                mutated = original.replace(old, new, 1)
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "template.yaml")
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(mutated)
                    suite_class = type("Mutated", (guarded.TemplateTest,), {"template_path": path})
                    suite = unittest.defaultTestLoader.loadTestsFromTestCase(suite_class)
                    with open(os.devnull, "w") as sink:
                        result = unittest.TextTestRunner(stream=sink, verbosity=0).run(suite)
                    self.assertFalse(result.wasSuccessful(), f"dropping '{what}' went unnoticed")
                    if os.environ.get("RELAY_SHOW_MUTATIONS"):
                        caught = sorted({str(t[0]).split()[0] for t in result.failures + result.errors})
                        print(f"\n  {what}: caught by {caught}")


if __name__ == "__main__":
    unittest.main()
