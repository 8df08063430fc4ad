#!/usr/bin/env python3
"""Lists every function over the line limit in the non-test Rust code of the workspace.

A reader should be able to hold a function in their head, so `scripts/test.sh` fails on a
function longer than LIMIT lines (signature to closing brace) unless a comment in the lines just
above it says why it must stay one piece: a line containing "one piece" (e.g.
`// One piece: the match below is the whole state machine, read top to bottom.`).

Test code is not counted: files under `tests/` or `benches/`, `tests.rs` and `*_tests.rs`, and
`#[cfg(test)]` modules. The scan is lexical (strings, chars and comments are skipped when
braces are counted), which is enough for rustfmt-formatted code.

    python3 scripts/long_functions.py [--limit 80] [paths...]
Exit status 1 when a function is over the limit without a reason.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PATHS = ["crates", "functions"]
FN_START = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)")
REASON = "one piece"


def strip_code(line, state):
    """The line with strings, chars and comments blanked; state carries block comments and
    multi-line strings across lines."""
    out = []
    i = 0
    while i < len(line):
        c = line[i]
        if state["block"]:
            if line.startswith("*/", i):
                state["block"] -= 1
                i += 2
            elif line.startswith("/*", i):
                state["block"] += 1
                i += 2
            else:
                i += 1
            continue
        if state["string"] is not None:
            closer = state["string"]
            if closer == '"' and c == "\\":
                i += 2
                continue
            if line.startswith(closer, i):
                state["string"] = None
                i += len(closer)
            else:
                i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] += 1
            i += 2
            continue
        raw = re.match(r'r(#*)"', line[i:])
        if raw and (i == 0 or not (line[i - 1].isalnum() or line[i - 1] == "_")):
            state["string"] = '"' + raw.group(1)
            i += len(raw.group(0))
            continue
        if c == '"':
            state["string"] = '"'
            i += 1
            continue
        if c == "'":
            char = re.match(r"'(\\.[^']*|[^\\'])'", line[i:])
            if char:
                i += len(char.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def is_test_file(path):
    parts = path.relative_to(ROOT).parts
    return "tests" in parts[:-1] or "benches" in parts or path.name == "tests.rs" or path.name.endswith("_tests.rs")


def long_functions(path, limit):
    lines = path.read_text().splitlines()
    state = {"block": 0, "string": None}
    depth = 0
    skip_until_depth = None  # inside a #[cfg(test)] item
    pending_cfg_test = False
    open_fns = []  # (name, start line index, depth at which the body opens)
    found = []
    for index, line in enumerate(lines):
        code = strip_code(line, state)
        stripped = code.strip()
        if skip_until_depth is None:
            if stripped.startswith("#[cfg(test)]"):
                pending_cfg_test = True
            match = FN_START.match(code)
            if match and not pending_cfg_test:
                open_fns.append([match.group(7), index, None])
        for ch in code:
            if ch == "{":
                depth += 1
                if pending_cfg_test and skip_until_depth is None:
                    skip_until_depth = depth
                    pending_cfg_test = False
                for fn in open_fns:
                    if fn[2] is None:
                        fn[2] = depth
            elif ch == "}":
                if skip_until_depth is not None and depth == skip_until_depth:
                    skip_until_depth = None
                for fn in list(open_fns):
                    if fn[2] == depth:
                        open_fns.remove(fn)
                        length = index - fn[1] + 1
                        if length > limit and not has_reason(lines, fn[1]):
                            found.append((fn[0], fn[1] + 1, length))
                depth -= 1
            elif ch == ";":
                # A signature without a body (trait method declaration).
                for fn in list(open_fns):
                    if fn[2] is None:
                        open_fns.remove(fn)
        if pending_cfg_test and stripped.endswith(";"):
            pending_cfg_test = False  # `#[cfg(test)] mod tests;` or a use
    return found


def has_reason(lines, fn_index):
    """A comment among the lines just above the fn (doc comments and attributes included)."""
    j = fn_index - 1
    while j >= 0 and lines[j].strip().startswith(("//", "#[", "///")):
        if REASON in lines[j].lower():
            return True
        j -= 1
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    args = parser.parse_args()
    over = []
    for base in args.paths:
        base_path = (ROOT / base).resolve()
        files = [base_path] if base_path.is_file() else sorted(base_path.rglob("*.rs"))
        for path in files:
            if "target" in path.parts or is_test_file(path):
                continue
            for name, line, length in long_functions(path, args.limit):
                over.append(f"{path.relative_to(ROOT)}:{line}: fn {name} is {length} lines")
    for entry in over:
        print(entry)
    if over:
        print(f"{len(over)} function(s) over {args.limit} lines without a \"{REASON}\" comment saying why")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
