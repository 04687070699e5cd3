#!/usr/bin/env python3
"""Checks elastic-run's documentation against the binary itself.

- `elastic-run --version` prints `elastic-run <project version>` and exits 0;
- the man page's OPTIONS section names exactly the options `elastic-run --help`
  lists (dash and underscore spellings count as one), and its ENVIRONMENT
  section names every environment variable `--help` shows;
- the man page states the project version;
- optionally (--render), `man -l` renders the page without warnings.

Usage: check_cli_docs.py --elastic-run BIN --man-page FILE --version X.Y.Z [--render]
"""
import argparse
import os
import re
import subprocess
import sys


def help_options(help_text):
    """Options and environment variables from CLI11's --help layout."""
    options, envs = set(), set()
    for line in help_text.splitlines():
        stripped = line.lstrip()
        # Option lines start with a dash; wrapped descriptions do not.
        if not stripped.startswith("-"):
            continue
        for name in stripped.split()[0].split(","):
            if re.fullmatch(r"--?[A-Za-z0-9][A-Za-z0-9_-]*", name):
                options.add(normalize(name))
        envs.update(re.findall(r"\(Env:([A-Z0-9_]+)\)", line))
    return options, envs


def normalize(option):
    # --nproc_per_node and --nproc-per-node are one option.
    return option[:2] + option[2:].replace("_", "-") if option.startswith("--") else option


def roff_sections(page):
    """{section name: its roff lines}, with roff's escaped dashes unescaped."""
    sections, current = {}, None
    for line in page.replace("\\-", "-").splitlines():
        match = re.match(r'\.SH\s+"?([^"]+)"?', line)
        if match:
            current = match.group(1).strip()
            sections[current] = []
        elif current:
            sections[current].append(line)
    return sections


def man_options(lines):
    """The options named in the tag line of each .TP paragraph."""
    options = set()
    for i, line in enumerate(lines):
        if line.startswith(".TP") and i + 1 < len(lines):
            tag = re.sub(r"\\f[BIRP]", "", lines[i + 1])
            for name in re.findall(r"(?<![A-Za-z0-9_-])(--?[A-Za-z0-9][A-Za-z0-9_-]*)", tag):
                options.add(normalize(name))
    return options


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elastic-run", required=True)
    parser.add_argument("--man-page", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    problems = []

    version = subprocess.run([args.elastic_run, "--version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0 or version.stdout != f"elastic-run {args.version}\n":
        problems.append(f"--version: exit {version.returncode}, stdout {version.stdout!r}, stderr {version.stderr!r}")

    shown = subprocess.run([args.elastic_run, "--help"], capture_output=True, text=True, timeout=60)
    if shown.returncode != 0:
        problems.append(f"--help exited {shown.returncode}")
    in_help, help_envs = help_options(shown.stdout)
    if len(in_help) < 10:
        problems.append(f"--help lists only {sorted(in_help)}: its layout changed?")

    with open(args.man_page, encoding="utf-8") as f:
        page = f.read()
    sections = roff_sections(page)
    in_page = man_options(sections.get("OPTIONS", []))
    for option in sorted(in_help - in_page):
        problems.append(f"{option} is in --help but not in the man page's OPTIONS")
    for option in sorted(in_page - in_help):
        problems.append(f"{option} is in the man page's OPTIONS but not in --help")
    environment = re.sub(r"\\f[BIRP]", "", "\n".join(sections.get("ENVIRONMENT", [])))
    for env in sorted(help_envs):
        if not re.search(rf"\b{env}\b", environment):
            problems.append(f"{env} (from --help) is not in the man page's ENVIRONMENT")
    if f"elastic {args.version}" not in page:
        problems.append(f"the man page does not state version {args.version}")

    if args.render:
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        rendered = subprocess.run(["man", "--warnings", "-l", "-P", "cat", args.man_page], capture_output=True,
                                  text=True, timeout=120, env=env)
        if rendered.returncode != 0 or "elastic-run" not in rendered.stdout or rendered.stderr.strip():
            problems.append(f"man -l: exit {rendered.returncode}, stderr {rendered.stderr.strip()!r}")

    for problem in problems:
        print(f"check_cli_docs: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_cli_docs: {len(in_help)} options and {len(help_envs)} variables agree; version {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
