#!/usr/bin/env bash
# What a lent GPU machine needs for bench/gpu_mc_sft.py and cannot fetch (it has no network, and
# one call carries at most 64 MiB): the project's missing wheels (.whl/), the SmolLM2 GGUF in two
# parts (.gpu/p1, .gpu/p2) and the dataset's train, val and latest temporal rows (.gpu/dataset).
# Then, with the device tool:
#   call 1, carry [".whl", ".gpu/p1"]:
#     mkdir -p /root/stash && cp .gpu/p1/gguf.part1 /root/stash/ &&
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   call 2 at once (the machine stays warm 30 s), carry [".whl", ".gpu/p2", ".gpu/dataset"]:
#     export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1;
#     cat /root/stash/gguf.part1 .gpu/p2/gguf.part2 > /root/smollm2.gguf;
#     python3 -m bench.gpu_mc_sft --gguf /root/smollm2.gguf --dataset .gpu/dataset --work /root/work \
#       --report $OUT/report --budget-min 4 2>&1 | tee $OUT/log.txt
#   (no filter between the program and tee: grep buffers, and a killed run then shows nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-var/demo/dataset}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
mkdir -p .whl .gpu/p1 .gpu/p2
# the device image's Python is 3.12 and lacks these (its own torch, transformers, pandas, pyarrow,
# scikit-learn, peft, rich and typer are used)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 python-dotenv==1.2.4 fhir.resources==8.3.0 \
  fhir_core==1.1.12 PyJWT==2.15.1 striprtf==0.0.35 gguf==0.19.0 comorbidipy==0.5.0
GGUF=$(.venv/bin/python -c "from lang1ops.base_model import find_smollm2_gguf; print(find_smollm2_gguf())")
head -c 56000000 "$GGUF" > .gpu/p1/gguf.part1
tail -c +56000001 "$GGUF" > .gpu/p2/gguf.part2
.venv/bin/python - "$DATASET" <<'EOF'
import json, sys
from pathlib import Path

import pandas as pd

source, target = Path(sys.argv[1]), Path(".gpu/dataset")
target.mkdir(parents=True, exist_ok=True)
info = json.loads((source / "dataset.json").read_text())
keep = ["train", "val", sorted(s for s in info["splits"] if s.startswith("temporal"))[-1]]
labels = pd.read_parquet(source / "labels.parquet")
labels = labels[labels["split"].isin(keep)]
notes = pd.read_parquet(source / "notes.parquet")
notes = notes[notes["note_id"].isin(labels["note_id"])]
labels.to_parquet(target / "labels.parquet", compression="zstd", compression_level=19, index=False)
notes.to_parquet(target / "notes.parquet", compression="zstd", compression_level=19, index=False)
(target / "dataset.json").write_text(json.dumps(info | {"splits": keep, "subset_of": str(source)}, indent=1))
print(f"{len(notes):,} notes of {', '.join(keep)} in {target}")
EOF
du -sh .whl .gpu/*
