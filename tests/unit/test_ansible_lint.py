"""The Ansible role without hosts: ansible-lint (production profile), the playbook's syntax, and
the configuration templates: every daemon key has a prefixed, documented role variable, and the
rendered files (defaults and per-host overrides) are what the daemons' own parser accepts.

The role against booted hosts: tests/system/test_ansible.py.
"""

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from clusterplex.core import config

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLE = ANSIBLE / "roles" / "clusterplex"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
       "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
       "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")}
# The one shared key: all three files name the same secret file.
SHARED = {"secret_file": "clusterplex_secret_file"}


def tool(name):
    path = shutil.which(name, path=ENV["PATH"])
    if path is None:
        pytest.fail(f"{name} not installed (tests/setup.sh installs ansible and ansible-lint)")
    return path


def run(argv, cwd=ANSIBLE, timeout=240, **kw):
    return subprocess.run(argv, cwd=cwd, env={**ENV, **kw.pop("env", {})}, capture_output=True, text=True,
                          timeout=timeout, **kw)


def role_files():
    return sorted(str(p.relative_to(ANSIBLE)) for p in ANSIBLE.rglob("*") if p.is_file())


def test_ansible_lint_production_profile_is_clean():
    # explicit paths: ansible-lint only finds files git already tracks when given a directory
    r = run([tool("ansible-lint"), "--profile", "production", "--nocolor", "site.yml", "roles/clusterplex"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Passed with production profile" in r.stdout + r.stderr


def test_playbook_syntax_check():
    r = run([tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini", "site.yml"])
    assert r.returncode == 0, r.stdout + r.stderr
    # the example inventory parses into the groups the role uses
    r = run([tool("ansible-inventory"), "-i", "inventory.example.ini", "--list"])
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    assert inv["plex"]["hosts"] == ["plexbox.lan"] and len(inv["workers"]["hosts"]) == 3
    assert inv["_meta"]["hostvars"]["desk.lan"]["clusterplex_worker_hwaccel"] == "nvenc"


def schema_keys(section, prefix=()):
    for name, field in section.fields.items():
        if isinstance(field, config.Section):
            yield from schema_keys(field, prefix + (name,))
        else:
            yield prefix + (name,)


def variable(kind, key):
    return SHARED.get("/".join(key)) or f"clusterplex_{kind}_{'_'.join(key)}"


def test_every_daemon_key_is_a_documented_role_variable():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    defaults_text = (ROLE / "defaults" / "main.yml").read_text()
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    missing = []
    for kind, schema in config.SCHEMAS.items():
        template = (ROLE / "templates" / f"{kind}.yaml.j2").read_text()
        for key in schema_keys(schema):
            var = variable(kind, key)
            if var not in defaults or var not in specs or "{{ " + var not in template:
                missing.append(f"{kind}: {'/'.join(key)} -> {var}")
            elif not specs[var].get("description"):
                missing.append(f"{var}: no description in meta/argument_specs.yml")
    assert not missing, missing
    # every public variable has a default, a spec and a comment above it; all prefixed
    assert set(defaults) == set(specs)
    assert all(v.startswith("clusterplex_") for v in defaults)
    lines = defaults_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("clusterplex_") and not line.startswith(("clusterplex_worker_codecs_", "clusterplex_worker_eae_")):
            above = lines[i - 1]
            assert above.startswith("#") or lines[i - 1].startswith("clusterplex_"), f"no comment above {line}"


RENDER = textwrap.dedent("""\
    ---
    - name: Render the role's configuration templates
      hosts: localhost
      connection: local
      gather_facts: false
      vars_files:
        - {role}/defaults/main.yml
      tasks:
        - name: Render
          ansible.builtin.template:
            src: "{role}/templates/{{{{ item }}}}.yaml.j2"
            dest: "{out}/{{{{ item }}}}.yaml"
            mode: "0644"
          loop: [orchestrator, worker, pms]
    """)


def render(tmp_path, extra=None):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (tmp_path / "render.yml").write_text(RENDER.format(role=ROLE, out=out))
    argv = [tool("ansible-playbook"), "-i", "localhost,", str(tmp_path / "render.yml")]
    if extra is not None:
        (tmp_path / "extra.json").write_text(json.dumps(extra))
        argv += ["-e", f"@{tmp_path / 'extra.json'}"]
    r = run(argv, cwd=tmp_path, env={"ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
                                     "ANSIBLE_LOCALHOST_WARNING": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    return {kind: (out / f"{kind}.yaml").read_text() for kind in ("orchestrator", "worker", "pms")}


def test_rendered_defaults_are_the_daemons_defaults(tmp_path):
    files = render(tmp_path)
    for kind, text in files.items():
        assert text.startswith("#") and "Ansible managed" in text.split("\n\n")[0]
        assert config.parse(kind, text.encode(), f"{kind}.yaml") == config.SCHEMAS[kind].default_value(), kind


def test_rendered_per_host_overrides(tmp_path):
    files = render(tmp_path, {
        "clusterplex_worker_max_jobs": 4, "clusterplex_worker_hwaccel": "vaapi",
        "clusterplex_worker_transcode_root": "/srv/plex transcode",
        "clusterplex_worker_path_map": [{"from": "/data/media", "to": "/mnt/nas/media"}],
        "clusterplex_worker_discovery_interfaces": ["192.168.1.21"],
        "clusterplex_worker_env": {"LIBVA_DRIVER_NAME": "iHD"},
        "clusterplex_worker_encoder_swaps": {"libx264": "h264_vaapi"},
        "clusterplex_worker_codecs_enabled": "false",          # a string from an .ini inventory
        "clusterplex_orchestrator_workers": ["10.0.20.5:3501"],
        "clusterplex_orchestrator_strategy": "RR",
        "clusterplex_pms_mode": "remote",
        "clusterplex_pms_local_rules": [{"argv_contains": "eac3_eae"}],
        "clusterplex_pms_relay_advertise": "http://plexbox.lan:32499",
        "clusterplex_secret_file": "/etc/clusterplex/other-secret",
    })
    w = config.parse("worker", files["worker"].encode())
    assert (w.max_jobs, w.hwaccel, w.transcode_root) == (4, "vaapi", "/srv/plex transcode")
    assert [(m.__dict__["from"], m.to) for m in w.path_map] == [("/data/media", "/mnt/nas/media")]
    assert w.discovery.interfaces == ["192.168.1.21"] and w.env == {"LIBVA_DRIVER_NAME": "iHD"}
    assert w.encoder_swaps == {"libx264": "h264_vaapi"} and w.codecs.enabled is False
    assert w.secret_file == "/etc/clusterplex/other-secret"
    o = config.parse("orchestrator", files["orchestrator"].encode())
    assert o.workers == [("10.0.20.5", 3501)] and o.strategy == "RR"
    p = config.parse("pms", files["pms"].encode())
    assert p.mode == "remote" and p.relay.advertise == "http://plexbox.lan:32499"
    assert p.local_rules[0].argv_contains == "eac3_eae"
