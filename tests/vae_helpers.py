"""What the VAE tests share: crops of a small synthetic data set and one small training run per objective."""

from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.synthetic.generator import STAINS, generate_dataset
from napari_gradcamo.train.vae_loop import VaeConfig, fit_vae

CROP = [8, 32, 32]


def small_crops():
    """Crops of 5 synthetic fields × 6 cells (two classes, a background confound)."""
    fields = generate_dataset(5, 6, n_classes=2, shape=(12, 48, 48), n_cells=6, voxel_size=(2.0, 1.5, 1.5),
                              sites_per_well=1, confound="background")
    return crops_from_fields(fields, CROP)


def fit_small_vae(crops, objective: str, out):
    """A 4-epoch, 4-unit VAE of ``objective`` on ``crops``, written to ``out``."""
    config = VaeConfig(objective=objective, latent_dim=4, width=4, epochs=4, batch_size=8, lr=3e-3, seed=1,
                       val_fraction=0.3, device="cpu")
    return fit_vae(crops, ["control", "treated"], STAINS, CROP, config, out)
