"""The core claim, tested: a model that learned a background shortcut scores clearly lower than one that
learned the cells, although both classify well. Real training (seeded, small 3D CNN, CPU)."""

import pytest

from napari_gradcamo.models.bundled import FIELD_MODELS, load_demo_model
from napari_gradcamo.synthetic.experiment import accuracy, audit_fields, demo_field, scenario_fields, train_scenario


@pytest.fixture(scope="module")
def audits():
    """Train both scenarios from scratch and audit 12 held-out fields (wells unseen in training) of each."""
    tables = {}
    for scenario in ("honest", "shortcut"):
        bundle = train_scenario(scenario, seed=1)
        tables[scenario] = audit_fields(bundle, scenario_fields(scenario, seed=2, n_fields=12, first_well=20))
    return tables


@pytest.mark.slow
def test_both_models_learned_their_task(audits):
    for scenario, table in audits.items():
        assert accuracy(table) >= 0.9, f"{scenario} model did not learn (held-out accuracy {accuracy(table):.2f})"


@pytest.mark.slow
def test_shortcut_model_scores_far_below_honest_model(audits):
    honest, shortcut = audits["honest"], audits["shortcut"]
    med_h, med_s = honest["gradcamo"].median(), shortcut["gradcamo"].median()
    chance = honest["chance"].median()
    print(f"median Grad-CAMO honest {med_h:.3f}, shortcut {med_s:.3f}, chance {chance:.3f}")
    # Measured on 2 CPU cores: seed 1: honest 0.245, shortcut 0.092; seed 0: 0.268 vs 0.016; chance 0.083.
    assert med_h > 2 * chance, "the honest model should look at its cell more than a uniform map does"
    assert med_s < 1.5 * chance, "the shortcut model should look at its cell no more than a uniform map does"
    assert med_h - med_s >= 0.10 and med_s <= 0.5 * med_h
    # Per cell, the shortcut model's attention sits mostly on the background.
    assert shortcut["background_share"].median() > 0.5 > honest["background_share"].median()


def test_bundled_demo_models_disagree_about_where_to_look():
    """On the demo field (treated cells AND the background confound) both bundled models call most cells
    'treated', but the honest model looks at the cells and the shortcut model at the background.
    Measured: Grad-CAMO median honest 0.189 vs shortcut 0.118; background share 0.42 vs 0.72."""
    field = demo_field()
    tables = {name: audit_fields(load_demo_model(name), [field]) for name in FIELD_MODELS}
    honest, shortcut = tables["honest"], tables["shortcut"]
    assert (honest["predicted_class"] == "treated").mean() >= 0.7
    assert (shortcut["predicted_class"] == "treated").mean() >= 0.9
    assert honest["gradcamo"].median() > shortcut["gradcamo"].median() + 0.04
    assert shortcut["background_share"].median() > honest["background_share"].median() + 0.15


# ---------------------------------------------------------------- chance-corrected scores, two confounds (issue 11)


@pytest.fixture(scope="module")
def confound_study():
    """Per seed: honest, stripes-shortcut and debris-shortcut models, each audited on held-out wells at
    the layer the training rule (deletion on validation wells) picks for it, with the occlusion drops."""
    from napari_gradcamo.audit.run import AuditSettings
    from napari_gradcamo.audit.sanity import check_image
    from napari_gradcamo.synthetic.score_study import CONFOUND_SCENARIOS, held_out_fields, occlusion_table, rule_layer

    study = {}
    for seed in (1, 2, 3):
        for name in ("honest", *CONFOUND_SCENARIOS.values()):
            bundle = train_scenario(name, seed=seed)
            layer, _ = rule_layer(bundle, name, seed)
            fields = held_out_fields(name, seed)
            study[seed, name] = occlusion_table(bundle, fields, layer)
            study[seed, name, "sanity"] = check_image(fields[0].image, fields[0].labels, bundle,
                                                      AuditSettings(target_layer=layer), seed=seed)
            if name == "honest":
                study[seed, name, "bundle"], study[seed, name, "fields"] = bundle, fields
    return study


RULE_MISSES = pytest.mark.xfail(strict=True, reason=(
    "measured (scripts/score_experiment.py): the deletion rule picks stage1 for the seed-2 debris shortcut, "
    "where its map for the absent debris lands on the cell (normalised median 0.101 vs the honest 0.091)"))
#: Seed 3 sits at the test's edge and moves with the thread count: AUC 0.62 (stripes) / 0.58 (debris) in a CI
#: run (2 threads), 0.65 / 0.62 with OMP_NUM_THREADS=1 — not strict for that reason.
SEED3_WEAK = pytest.mark.xfail(reason="measured AUC 0.62-0.65 (stripes) / 0.58-0.62 (debris) at the rule's layer, "
                                      "seed 3: the layer rule does not separate every seed", strict=False)


@pytest.mark.slow
@pytest.mark.parametrize("confound, seed", [("stripes", 1), ("stripes", 2), pytest.param("stripes", 3, marks=SEED3_WEAK),
                                            ("debris", 1), pytest.param("debris", 2, marks=RULE_MISSES),
                                            pytest.param("debris", 3, marks=SEED3_WEAK)])
def test_normalised_score_separates_honest_from_shortcut_at_the_rule_layer(confound_study, confound, seed):
    from napari_gradcamo.synthetic.score_study import CONFOUND_SCENARIOS, separation_auc

    honest, shortcut = confound_study[seed, "honest"], confound_study[seed, CONFOUND_SCENARIOS[confound]]
    auc = separation_auc(honest["normalised"], shortcut["normalised"])
    print(f"{confound} seed {seed}: layers {honest['target_layer'][0]}/{shortcut['target_layer'][0]}, "
          f"normalised median {honest['normalised'].median():.3f} vs {shortcut['normalised'].median():.3f}, AUC {auc:.2f}")
    assert honest["normalised"].median() > shortcut["normalised"].median()
    assert auc >= 0.65, f"honest and shortcut barely separate (AUC {auc:.2f})"


@pytest.mark.slow
@pytest.mark.parametrize("confound", ["stripes", "debris"])
def test_occlusion_agrees_in_direction_with_the_score(confound_study, confound):
    """The honest model depends more on the cell, relative to its surroundings, than the shortcut model."""
    from napari_gradcamo.synthetic.score_study import CONFOUND_SCENARIOS

    for seed in (1, 2, 3):
        margin = {name: float((t["drop_cell_occluded"] - t["drop_context_occluded"]).median())
                  for name, t in (("honest", confound_study[seed, "honest"]),
                                  ("shortcut", confound_study[seed, CONFOUND_SCENARIOS[confound]]))}
        print(f"{confound} seed {seed}: median (drop cell hidden − drop context hidden) {margin}")
        assert margin["honest"] > margin["shortcut"]


#: Measured with OMP_NUM_THREADS=1: the seed-2 honest model's stage1 maps with every weight random kept a median
#: Spearman of 0.15, 0.59, 0.70, −0.28, 0.66 over the five draws (median 0.59 ≥ 0.5).
HONEST_SEED2_IMAGE_LIKE = pytest.mark.xfail(strict=False, reason=(
    "measured: the seed-2 honest model's stage1 maps stay correlated with a random network's (median over draws "
    "0.59): those maps are largely the image's structure"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=HONEST_SEED2_IMAGE_LIKE), 3])
def test_trained_models_pass_the_randomisation_check_at_the_rule_layer(confound_study, seed):
    """Adebayo et al.'s model-randomisation test, every weight random, median over 5 draws."""
    from napari_gradcamo.synthetic.score_study import CONFOUND_SCENARIOS

    reports = {name: confound_study[seed, name, "sanity"] for name in ("honest", *CONFOUND_SCENARIOS.values())}
    for name, report in reports.items():
        last = report.steps[-1]
        print(f"seed {seed} {name} at {report.layer}: every weight random, median Spearman per draw "
              f"{[round(v, 2) for v in last.draw_spearman]} -> {last.median_spearman:.2f}")
    assert all(report.passed for report in reports.values()), {n: r.warnings for n, r in reports.items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_maps_of_a_model_trained_on_shuffled_labels_differ(confound_study, seed):
    """Adebayo et al.'s data-randomisation test: the same architecture and data with the labels shuffled."""
    import numpy as np

    from napari_gradcamo.audit.batch import batch_of
    from napari_gradcamo.audit.sanity import MAX_CORRELATION, compare_models
    from napari_gradcamo.crops.extract import cell_table, extract_crop

    bundle, fields = confound_study[seed, "honest", "bundle"], confound_study[seed, "honest", "fields"]
    shuffled = train_scenario("honest", seed=seed, shuffle_labels=True)
    field = fields[0]
    crops = batch_of([extract_crop(field.image, field.labels, c, bundle.metadata.crop_shape)
                      for c in cell_table(field.labels)])
    layer = confound_study[seed, "honest", "sanity"].layer
    rho = compare_models(bundle.model, shuffled.model, crops, bundle.metadata.normalization, layer)
    median = float(np.nanmedian(rho))
    print(f"seed {seed} at {layer}: shuffled-label model's training accuracy "
          f"{shuffled.metadata.training['final_accuracy']:.2f}; median Spearman with the honest maps {median:.2f}")
    assert median < MAX_CORRELATION
