# lesionseg — every stage is a target. Variables:
#   DATA=folder of cases   CONFIG=stage config   RUN=run folder   PRED=predictions   OUT=report folder
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data_samples
CONFIG ?= pipelines/samples.toml
RUN    ?= runs/samples
PRED   ?= $(RUN)/pred
OUT    ?= $(RUN)/report
PATCHES ?= $(RUN)/patches
SET    ?=
MASKS  ?= ../shared/data/lesjak_masks
LESIONSEG := $(BIN)/lesionseg
STAMP  := $(VENV)/.installed-stamp

.PHONY: install niivue test demo check patches train infer tune atlas evaluate compare samples bench clean train-ms crossval-ms study-ms study-summary lopo-ms verify-ms gpu-pack train-ms-flair

install: $(STAMP) niivue  ## create the virtual environment and install lesionseg (+ test tools, the report's viewer)

niivue: $(STAMP)  ## fetch the pinned NiiVue viewer for report.html (npm; without it reports have no 3D viewer)
	-@$(BIN)/python -m lesionseg.evaluation.niivue_asset

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: install  ## run the test suite
	$(BIN)/python -m pytest -q

demo: install  ## the main job on data_samples/: check -> train -> infer -> evaluate
	$(MAKE) --no-print-directory check train infer evaluate
	@echo ""
	@echo "Demo finished. Reports:"
	@echo "  validation during training: $(RUN)/validation/  (history: $(RUN)/history.csv, curves: $(RUN)/curves.png)"
	@echo "  per lesion:  $(OUT)/lesions.csv"
	@echo "  per case:    $(OUT)/cases.csv"
	@echo "  summary:     $(OUT)/summary.csv"
	@echo "  to look at:  $(OUT)/report.html  (open it in a browser: 3D viewer and lesion tables)"

check: install  ## validate the cases in DATA
	$(LESIONSEG) check $(DATA) --config $(CONFIG)

patches: install  ## write a patch bank (index.csv + patches) to PATCHES
	$(LESIONSEG) patches --config $(CONFIG) --data $(DATA) --out $(PATCHES) $(SET)

train: install  ## train a model into RUN (an earlier run there is replaced once the new one has succeeded)
	$(LESIONSEG) train --config $(CONFIG) --data $(DATA) --out $(RUN) --overwrite $(SET)

infer: install  ## predict DATA with the model in RUN into PRED
	$(LESIONSEG) infer --model $(RUN) --input $(DATA) --out $(PRED) $(SET)

tune: install  ## tune threshold and minimum lesion size of RUN on DATA
	$(LESIONSEG) tune --model $(RUN) --data $(DATA) $(SET)

atlas: install  ## store a lesion atlas of MASKS (default: the shared Lesjak masks) with RUN; tune then tunes its cut-off
	$(LESIONSEG) atlas --model $(RUN) --masks $(MASKS) $(SET)

evaluate: install  ## lesion-wise evaluation of PRED against DATA into OUT
	$(LESIONSEG) evaluate --pred $(PRED) --truth $(DATA) --out $(OUT) --config $(CONFIG) $(SET)

REPORTS ?= $(OUT)
TABLE  ?= runs/compare.csv
compare: install  ## side-by-side table of REPORTS (space-separated report folders) into TABLE
	$(LESIONSEG) compare $(REPORTS) --out $(TABLE)

samples: install  ## regenerate data_samples/ (deterministic)
	$(LESIONSEG) samples --out data_samples

bench: install  ## run the benchmarks in bench/
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Real data (../shared/data/ms_lesions, 6 MS exams of 4 patients): see pipelines/ms_experiments.py
MS := $(BIN)/python pipelines/ms_experiments.py
train-ms: install  ## real MS exams: models/ms_flair_t1 as shipped (all 6 exams, ms_recipe_dice, torch, atlas, tuned) -> runs/ms_t1_all
	$(BIN)/python -m pip install -q -e '.[dev,torch]'
	KERAS_BACKEND=torch $(LESIONSEG) train --config pipelines/ms_recipe_dice.toml --data ../shared/data/ms_lesions --out runs/ms_t1_all --overwrite --set train.threads=1 --set train.val_fraction=0 $(SET)
	$(LESIONSEG) atlas --model runs/ms_t1_all --masks ../shared/data/lesjak_masks --exclude patient07 patient19
	$(LESIONSEG) tune --model runs/ms_t1_all --data ../shared/data/ms_lesions
	$(LESIONSEG) infer --model runs/ms_t1_all --input ../shared/data/ms_lesions --out runs/ms_t1_all/fit_pred
	$(LESIONSEG) evaluate --pred runs/ms_t1_all/fit_pred --truth ../shared/data/ms_lesions --out runs/ms_t1_all/fit_report --config runs/ms_t1_all/config.yaml
	@echo "python pipelines/ms_experiments.py ship --run runs/ms_t1_all --to models/ms_flair_t1   # to replace the shipped model"

train-ms-flair: install  ## real MS exams: models/ms_flair as shipped (6 exams + 12 made by the clinical path, FLAIR only, depth 3, torch, 12,800 patches; decision 0.99 / 0 mm3 chosen across folds) -> runs/ms_flair_clinvis_all
	$(BIN)/python -m pip install -q -e '.[dev,torch]'
	test -d runs/ms_thick || $(LESIONSEG) thick-slices --config pipelines/ms_flair.toml --data ../shared/data/ms_lesions --out runs/ms_thick --slice-mm 7
	$(BIN)/python pipelines/clinical_training_set.py --config pipelines/ms_flair.toml --out runs/clinical_train_visible_all --visible-only --link-exams
	KERAS_BACKEND=torch $(LESIONSEG) train --config pipelines/ms_flair.toml --data runs/clinical_train_visible_all --out runs/ms_flair_clinvis_all --overwrite --set train.threads=1 $(SET)
	$(LESIONSEG) tune --model runs/ms_flair_clinvis_all --data runs/ms_thick --set infer.overlap=0.25 --set 'infer.tune_thresholds=[0.99]' --set 'infer.tune_min_sizes_mm3=[0]'
	@echo "python pipelines/ms_experiments.py ship --run runs/ms_flair_clinvis_all --to models/ms_flair   # to replace the shipped model"

crossval-ms: install  ## real MS exams: both folds, then the per-exam table (runs/ms_per_exam.csv)
	$(MS) fold A $(SET)
	$(MS) fold B $(SET)
	$(MS) tables

study-ms: install  ## real MS exams: the loss study (12 losses x 2 heads x 3 folds; restartable) -> studies/loss_study
	$(BIN)/python -m pip install -q -e '.[dev,torch]'
	$(LESIONSEG) study --config studies/loss_study/study.toml --data ../shared/data/ms_lesions --out studies/loss_study

study-summary: install  ## the loss study's table.md and tp_fp.png from studies/loss_study/results.csv
	$(LESIONSEG) study --summarize --out studies/loss_study --readme README.md

lopo-ms: install  ## real MS exams: leave-one-patient-out of the threshold baseline and RECIPE, then the table
	$(MS) lopo --config pipelines/threshold_baseline.toml
	$(MS) lopo --config $(or $(RECIPE),pipelines/ms_flair_t1.toml) $(SET)
	$(MS) lopo-table

gpu-pack: install  ## a lent GPU machine: wheels + compact cache of RECIPE (default ms_flair) -> .whl, .gpu (README)
	test -n "$$(ls .whl/*.whl 2>/dev/null)" || $(BIN)/python pipelines/gpu.py wheels
	$(BIN)/python pipelines/gpu.py pack --config $(or $(RECIPE),pipelines/ms_flair.toml) --out .gpu

verify-ms: install  ## the shipped models/ms_flair_t1 predicts the figures its card states (on the exams its card names)
	$(MS) verify

clean:
	rm -rf runs .pytest_cache
