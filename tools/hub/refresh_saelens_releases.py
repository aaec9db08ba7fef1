#!/usr/bin/env python3
"""Regenerates crates/sae-engine/data/saelens_releases.json, the SAELens release table that
`--sae saelens:RELEASE/SAE_ID` resolves through.

The facts come from SAELens's own published table (sae_lens/pretrained_saes.yaml inside
the sae-lens wheel): for each release its Hugging Face repository and conversion
function, for each SAE id its path inside the repository. Nothing else is kept.

Refresh (needs PyPI and PyYAML; nothing is installed into the environment):

    python3 tools/hub/refresh_saelens_releases.py            # newest sae-lens
    python3 tools/hub/refresh_saelens_releases.py --version 6.54.12
    python3 tools/hub/refresh_saelens_releases.py --yaml path/to/pretrained_saes.yaml --sae-lens-version X

then review `git diff crates/sae-engine/data/saelens_releases.json` and run `cargo test --test integration hub::`.

Output format (one release per line, so refreshes diff line by line):

    {"sae_lens_version": "...", "source": "...", "releases": {
    "RELEASE": {"repo": "ORG/NAME", "conversion": "gemma_2" | null,
                "path_prefix": "P", "saes": {"SAE_ID": "" | "PATH", ...},
                "normalize_activations": "..."   (only where SAELens overrides it)},
    ...}}

An SAE's path in the repository is path_prefix + SAE_ID when its entry is "", else the
entry itself. `conversion` null means SAELens's native layout (its `sae_lens` loader).
Scalars are read as the strings written in the YAML (BaseLoader), so an id such as
`01` stays `01`.
"""

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[2] / "crates" / "sae-engine" / "data" / "saelens_releases.json"
MEMBER = "sae_lens/pretrained_saes.yaml"


def fetch_yaml(version):
    """Downloads the sae-lens wheel (no dependencies) and returns (yaml text, version)."""
    spec = f"sae-lens=={version}" if version else "sae-lens"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "-d", tmp, spec],
            check=True,
        )
        wheels = list(Path(tmp).glob("sae_lens-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one sae_lens wheel in {tmp}, found {wheels}")
        got = wheels[0].name.split("-")[1]
        with zipfile.ZipFile(wheels[0]) as z:
            return z.read(MEMBER).decode("utf-8"), got


def null(v):
    return None if v in (None, "", "null", "None", "~") else v


def convert(text):
    """The YAML's releases in our compact form; exits on a row without id or path."""
    table = yaml.load(text, Loader=yaml.BaseLoader)
    out = {}
    for release, info in table.items():
        saes = info.get("saes") or []
        for s in saes:
            if not isinstance(s, dict) or "id" not in s or "path" not in s:
                sys.exit(f"release {release}: SAE entry without id/path: {s!r}")
        # The most common prefix P with path == P + id: those entries store "".
        prefixes = collections.Counter(
            s["path"][: len(s["path"]) - len(s["id"])] for s in saes if s["path"].endswith(s["id"])
        )
        prefix = prefixes.most_common(1)[0][0] if prefixes else ""
        entry = {
            "repo": info["repo_id"],
            "conversion": null(info.get("conversion_func")),
            "path_prefix": prefix,
            "saes": {s["id"]: "" if s["path"] == prefix + s["id"] else s["path"] for s in saes},
        }
        # The one override that changes the SAE's arithmetic (others are model/dataset hints).
        norm = null((info.get("config_overrides") or {}).get("normalize_activations"))
        if norm:
            entry["normalize_activations"] = norm
        out[release] = entry
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", help="sae-lens version to download (default: newest)")
    ap.add_argument("--yaml", type=Path, help="read this pretrained_saes.yaml instead")
    ap.add_argument("--sae-lens-version", help="with --yaml: the version it came from")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.yaml:
        if not a.sae_lens_version:
            sys.exit("--yaml needs --sae-lens-version")
        text, version = a.yaml.read_text("utf-8"), a.sae_lens_version
    else:
        text, version = fetch_yaml(a.version)
    releases = convert(text)
    lines = [json.dumps(r, separators=(",", ":")) + ":" + json.dumps(v, separators=(",", ":"))
             for r, v in sorted(releases.items())]
    head = json.dumps({"sae_lens_version": version, "source": f"sae-lens {version} wheel, {MEMBER}"})
    body = head[:-1] + ',"releases":{\n' + ",\n".join(lines) + "\n}}\n"
    json.loads(body)  # well-formed before anything is replaced
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(body, "utf-8")
    tmp.replace(a.out)
    n = sum(len(v["saes"]) for v in releases.values())
    print(f"{a.out}: {len(releases)} releases, {n} SAEs, from sae-lens {version}")


if __name__ == "__main__":
    main()
