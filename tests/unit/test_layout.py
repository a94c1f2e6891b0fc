"""The house rules that keep the core engine-agnostic, checked on the source."""

import ast
import os
import re
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


# Formats that can build arbitrary objects (or run code) when they decode; nothing read from Kafka or a
# checkpoint may go through them.
OBJECT_FORMATS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
KAFKA_READERS = ("streams", "schemas", "sinks", "producers")


def test_no_module_that_reads_kafka_imports_an_object_format():
    offenders = {(str(path.relative_to(ROOT)), name) for folder in KAFKA_READERS for path in (ROOT / folder).rglob("*.py")
                 for name in _imports(path) if name in OBJECT_FORMATS}
    assert not offenders


def test_no_module_that_reads_kafka_unpickles_or_keeps_pickled_flink_state():
    unpickling = re.compile(r"pickle\.loads?\b|Unpickler|PICKLED_BYTE_ARRAY")
    offenders = {(str(path.relative_to(ROOT)), hit) for folder in KAFKA_READERS for path in (ROOT / folder).rglob("*.py")
                 for hit in unpickling.findall(path.read_text())}
    assert not offenders
