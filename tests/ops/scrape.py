"""Parse one Prometheus scrape with the official client's OpenMetrics parser and print a JSON
summary: {sample name: {labels as 'k=v,k=v': value}} and every family's type.
Usage: python scrape.py URL"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
assert ctype.startswith("application/openmetrics-text"), ctype
samples, types = {}, {}
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    for s in family.samples:
        key = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples.setdefault(s.name, {})[key] = s.value
print(json.dumps({"samples": samples, "types": types}))
