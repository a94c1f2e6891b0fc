"""`tracetap demo` (the main job of `make demo`), run as a user runs it, against the running stack."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_sends_spans_through_kafka_into_elasticsearch(stack, base_settings):
    result = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--spans", "300"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "300 spans + 1 garbage record acknowledged by Kafka" in result.stdout
    assert "BAD_MAGIC_BYTE" in result.stdout
    index = f"{base_settings.elasticsearch.index_prefix}-spans"
    url = f"{base_settings.elasticsearch.hosts[0]}/{index}/_search?size=0&q=attributes.sample:true"
    with urllib.request.urlopen(url) as response:
        hits = json.loads(response.read())["hits"]["total"]["value"]
    assert hits >= 300
