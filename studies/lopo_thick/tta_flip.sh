#!/usr/bin/env bash
# Flip TTA (left-right) on the thick-slice LOPO held-out exams, each fold's own tuned decision; pooled report.
set -euo pipefail
SRC=runs/lopo_thick/ms_flair_3840; OUT=runs/lopo_thick/ms_flair_3840_tta
mkdir -p $OUT/pred
for F in L07 L19 M14 M18; do
  .venv/bin/lesionseg infer --model $SRC/$F --input $SRC/$F/cases_val --out $OUT/$F --set infer.overlap=0.25 --set 'infer.tta_flips=[0]'
  for f in $OUT/$F/*.nii.gz; do ln -sf "$(realpath $f)" $OUT/pred/; done
done
.venv/bin/lesionseg evaluate --pred $OUT/pred --truth $SRC/cases_all --out $OUT/report --config pipelines/ms_flair.toml
