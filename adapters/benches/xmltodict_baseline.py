#!/usr/bin/env python3
"""Baseline for `cargo bench -p adapters`: Python xmltodict (parse + json.dumps) on the same
corpus messages, MB/s of input XML (MB = 10^6 bytes), best of 5 rounds of >= 0.5 s each.

Run: python3 adapters/benches/xmltodict_baseline.py   (needs `pip install xmltodict`)
"""

import json
import os
import sys
import time

try:
    import xmltodict
except ImportError:
    sys.exit("skipped: xmltodict is not installed (pip install xmltodict)")

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "corpus"))

# the same inputs as benches/convert.rs
INPUTS = [
    ("xbau-0200", "xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/"
                  "baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml"),
    ("xjustiz-synth2", "xjustiz-testdaten-xjv/code/XJustiz-Testdaten/Beispiel_synthetisch2.xml"),
    ("xwasser-quality-max", "xwasser-hd-gmbh/tests/quality_report_maximal.xml"),
    ("cii-03.07a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/03.07a-INVOICE_uncefact.xml"),
    ("ubl-03.07a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/03.07a-INVOICE_ubl.xml"),
    ("ubl-01.01a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/01.01a-INVOICE_ubl.xml"),
]


def rate(data: bytes) -> float:
    best = 0.0
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while True:
            json.dumps(xmltodict.parse(data))
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= 0.5:
                break
        best = max(best, n * len(data) / elapsed / 1e6)
    return best


def main() -> None:
    if not os.path.isdir(CORPUS):
        sys.exit(f"skipped: corpus not found at {CORPUS}")
    for label, rel in INPUTS:
        with open(os.path.join(CORPUS, rel), "rb") as f:
            data = f.read()
        print(f"{label:22} {len(data):8} bytes  xmltodict+json.dumps {rate(data):8.1f} MB/s")


if __name__ == "__main__":
    main()
