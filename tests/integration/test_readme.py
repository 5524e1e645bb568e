# SPDX-License-Identifier: Apache-2.0
"""Issue 16: the README works as written on a fresh machine.

- The configuration table is the one `signal-gateway --help` prints: the same
  variables, the same defaults.
- The hand-test snippet ("Exchange an offer by hand") runs as written against
  a gateway (only its URL is pointed at the test's gateway), and what it
  imports is what the run command (`deploy/deps.sh run`) installs.
- Every command the README names exists; every relative link and #anchor in
  the Markdown files resolves (GitHub's heading ids).
"""

import os
import re
import subprocess

import pytest

import sg_helpers as h

README = h.REPO / "README.md"
MARKDOWN = [README, h.REPO / "CHANGELOG.md", h.REPO / "clients" / "README.md", h.REPO / "clients" / "js" / "README.md",
            h.REPO / "bench" / "README.md", h.REPO / "tests" / "e2e" / "README.md",
            *sorted((h.REPO / "docs").glob("*.md"))]


def help_defaults():
    env = h.clean_env()
    out = subprocess.run([h.GATEWAY_BIN, "--help"], env=env, capture_output=True, text=True, timeout=20).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s+--\S+\s+(SIGNAL_[A-Z0-9_]+)\s+(.*)$", line)
        if m:
            d = re.search(r"\[default ([^\]]*)\]$", m.group(2))
            found[m.group(1)] = d.group(1) if d else None
    return found, out


def readme_table():
    """{variable: default as the README writes it} from the Configuration table."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`SIGNAL_"):
            continue
        names = re.findall(r"`(SIGNAL_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        assert len(defaults) in (1, len(names)), line
        for i, n in enumerate(names):
            rows[n] = defaults[i] if len(defaults) > 1 else defaults[0]
    return rows


def test_configuration_table_is_the_help_table():
    want, _ = help_defaults()
    got = readme_table()
    assert sorted(got) == sorted(want), (f"README lacks {sorted(set(want) - set(got))}, "
                                         f"--help lacks {sorted(set(got) - set(want))}")
    for name, default in want.items():
        cell = got[name]
        quoted = re.match(r"^`([^`]*)`", cell)
        if default is None:
            assert not quoted, f"{name}: README says {cell}, --help has no default"
        else:
            assert quoted and quoted.group(1) == default, f"{name}: README says {cell}, --help [default {default}]"


def test_redis_url_form_agrees():
    _, help_text = help_defaults()
    form = re.search(r"SIGNAL_REDIS_URL\s+(redis\S*://\S+?);?\s", help_text).group(1)
    assert f"`{form}`" in README.read_text(), form


def readme_snippet():
    text = README.read_text()
    m = re.search(r"```sh\n(/usr/bin/python3 - <<'PY'\n.*?\nPY)\n```", text, re.S)
    assert m, "no hand-test snippet in the README"
    return m.group(1)


def deps_list(kind):
    text = (h.REPO / "deploy" / "deps.sh").read_text()
    m = re.search(rf"^{kind}=\(([^)]*)\)", text, re.M | re.S)
    return m.group(1).split() if m else []


def test_hand_test_snippet_imports_what_the_run_command_installs():
    snippet = readme_snippet()
    imports = set()
    for line in snippet.splitlines():
        m = re.match(r"import (.*)$", line)
        if m:
            imports |= {x.strip() for x in m.group(1).split(",")}
    stdlib = {"asyncio", "json", "os", "sys"}
    debian = {"websockets": "python3-websockets", "jwt": "python3-jwt"}
    installed = set(deps_list("build")) | set(deps_list("run"))
    for mod in sorted(imports - stdlib):
        assert mod in debian, f"the snippet imports {mod}: which package?"
        assert debian[mod] in installed, f"deploy/deps.sh run does not install {debian[mod]} (the snippet imports {mod})"
    text = (h.REPO / "deploy" / "dev-run.sh").read_text()
    assert "deploy/deps.sh run" in text


def test_hand_test_snippet_runs_as_written(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_RESUME_MS": None})
    env = h.clean_env()
    env["SIGNAL_JWT_SECRET"] = h.JWT_SECRET
    token = lambda sub: subprocess.run([h.GATEWAY_BIN, "token", "--sub", sub, "--room", "demo"], env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    snippet = readme_snippet().replace("ws://127.0.0.1:8443/ws", gw.ws_url)
    assert gw.ws_url in snippet
    r = subprocess.run(["bash", "-c", snippet], env=dict(env, TA=token("alice-readme"), TB=token("bob-readme")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    import json
    got = [json.loads(ln)["type"] for ln in lines]
    assert got == ["joined", "joined", "peer_joined", "relay"], r.stdout


def test_commands_named_in_the_readme_exist():
    text = README.read_text()
    for path in sorted(set(re.findall(r"(?:^|\s|`)(\.?/?(?:deploy|tests|bench|\.ci)/[\w./-]+\.?\w*)", text))):
        path = path.lstrip("./") if path.startswith("./") else path
        p = h.REPO / path.rstrip(".")
        assert p.exists(), f"README names {path}, which does not exist"
        if p.suffix in ("", ".sh") and p.is_file() and p.parent.name in ("deploy", "bench", "tests", ".ci"):
            assert os.access(p, os.X_OK), f"README runs {path}, which is not executable"


def github_anchor(heading):
    """The id GitHub gives a Markdown heading."""
    h_ = re.sub(r"`", "", heading.strip().lower())
    h_ = re.sub(r"[^\w\- ]", "", h_)
    return h_.replace(" ", "-")


def anchors_of(path):
    seen, out, fence = {}, set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            a = github_anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: str(p.relative_to(h.REPO)))
def test_relative_links_and_anchors_resolve(md):
    if not md.exists():
        pytest.skip(f"{md} does not exist")
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors_of(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.relative_to(h.REPO)}")
    assert not bad, bad
