# `make reproduce`: the paper's experiments at full scale (ref §8), one rule per stage.
# Every stage command resumes itself, and a stamp (`*.done`) marks it finished, so rerunning `make reproduce`
# continues where it stopped. `make -n reproduce` lists every stage. Knobs: WORKERS, DEVICE, BACKEND, RAY_ADDRESS,
# SEED, PAPER (the data folder). With BACKEND=ray the collect/evolve/evaluate workers run on a Ray cluster.
PAPER   ?= $(DATA)/paper
DEVICE  ?= auto
BACKEND ?= local
RAY     := --backend $(BACKEND) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))
TAUS    ?= 0.10 0.50 1.00 1.15 1.30
D       := $(PAPER)/doom
C       := $(PAPER)/carracing
tau_tag  = $(subst .,,$(1))

DOOM_EVALS := $(foreach t,$(TAUS),$(D)/eval_t$(call tau_tag,$(t)).done) $(D)/eval_random.done $(D)/eval_data.done
CAR_EVALS  := $(C)/eval_zh.done $(C)/eval_z.done $(C)/eval_zhidden.done $(C)/eval_random.done

.PHONY: reproduce reproduce-doom reproduce-carracing
reproduce: reproduce-doom reproduce-carracing
	$(WM) report --data $(PAPER) --out $(RESULTS)/REPORT.md
reproduce-doom: $(DOOM_EVALS)
reproduce-carracing: $(CAR_EVALS)

# ---- shared pipeline per env: collect -> V -> series -> M
$(PAPER)/%/rollouts.done: | install
	@mkdir -p $(@D)
	$(WM) collect --env $* --preset paper --workers $(WORKERS) --seed $(SEED) $(RAY) --out $(@D)/rollouts.h5
	@touch $@
$(PAPER)/%/vae.done: $(PAPER)/%/rollouts.done
	$(WM) train-vae --rollouts $(@D)/rollouts.h5 --preset paper --device $(DEVICE) --seed $(SEED) --out $(@D)/vae.h5
	@touch $@
$(PAPER)/%/series.done: $(PAPER)/%/vae.done
	$(WM) encode --rollouts $(@D)/rollouts.h5 --vae $(@D)/vae.h5 --device $(DEVICE) --out $(@D)/series.h5
	@touch $@
$(PAPER)/%/mdn.done: $(PAPER)/%/series.done
	$(WM) train-mdn --series $(@D)/series.h5 --preset paper --device $(DEVICE) --seed $(SEED) --out $(@D)/mdn.h5
	@touch $@

# ---- Doom: C trained only in the dream, one run per temperature (ref §8.2), evaluated in the real game
$(D)/controller_t%.done: $(D)/mdn.done
	$(WM) evolve --vae $(D)/vae.h5 --mdn $(D)/mdn.h5 --preset paper --in-dream \
	  --temperature $(shell python3 -c "print('$*'[:1] + '.' + '$*'[1:])") --device $(DEVICE) --seed $(SEED) \
	  --out $(D)/controller_t$*.h5
	@touch $@
$(D)/eval_t%.done: $(D)/controller_t%.done
	$(WM) evaluate --controller $(D)/controller_t$*.h5 --episodes 100 --workers $(WORKERS) $(RAY) \
	  --seed $(SEED) --out $(D)/eval_t$*.h5
	@touch $@
$(D)/eval_random.done $(D)/eval_data.done: $(D)/eval_%.done: | install
	@mkdir -p $(@D)
	$(WM) evaluate --policy $* --env doom --preset paper --episodes 100 --workers $(WORKERS) $(RAY) \
	  --seed $(SEED) --out $(D)/eval_$*.h5
	@touch $@

# ---- CarRacing: C in the real env (ref §8.1): the full world model [z, h], and the V-only rows
CAR_FEATURES_zh      := --features zh
CAR_FEATURES_z       := --features z
CAR_FEATURES_zhidden := --features z --hidden-units 40
$(C)/controller_%.done: $(C)/mdn.done
	$(WM) evolve --vae $(C)/vae.h5 --mdn $(C)/mdn.h5 --preset paper --real $(CAR_FEATURES_$*) \
	  --workers $(WORKERS) $(RAY) --seed $(SEED) --out $(C)/controller_$*.h5
	@touch $@
$(C)/eval_zh.done $(C)/eval_z.done $(C)/eval_zhidden.done: $(C)/eval_%.done: $(C)/controller_%.done
	$(WM) evaluate --controller $(C)/controller_$*.h5 --episodes 100 --workers $(WORKERS) $(RAY) \
	  --seed $(SEED) --out $(C)/eval_$*.h5
	@touch $@
$(C)/eval_random.done: | install
	@mkdir -p $(@D)
	$(WM) evaluate --policy random --env carracing --preset paper --episodes 100 --workers $(WORKERS) $(RAY) \
	  --seed $(SEED) --out $(C)/eval_random.h5
	@touch $@

.SECONDARY:
