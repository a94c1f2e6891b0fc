"""The house rules that keep the core engine-agnostic, checked on the source."""

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {"confluent_kafka", "faust", "pyflink", "elasticsearch", "aiokafka", "bcc", "pyshark",
                     "producers", "streams", "schemas", "sinks", "infra", "cli", "socket", "subprocess", "urllib"}


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_the_core_imports_no_engine_client_or_io():
    offenders = {(str(path.relative_to(ROOT)), name)
                 for path in (ROOT / "tracetap").rglob("*.py") for name in _imports(path) if name in FORBIDDEN_IN_CORE}
    assert not offenders


def test_the_venv_imports_debians_bcc():
    import bcc

    assert os.path.realpath(bcc.__file__).startswith("/usr/lib/python3/dist-packages/bcc/")
    assert hasattr(bcc, "BPF")
