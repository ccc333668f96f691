"""Virtual Cell Painting: class-guided image-to-image diffusion from brightfield (Palette + AdaGN + guidance).

``model`` (diffusers U-Net, noisy-stain classifier), ``data`` (paired 2D crops), ``diffusion`` (training,
DDPM/DDIM sampling, classifier guidance), ``checkpoint`` (safetensors + JSON), ``evaluate`` (the seed
paper's metrics, label-signal and Grad-CAMO audit), ``pipeline`` (fit / evaluate a whole model),
``files`` (paired TIFF manifests).  torch and diffusers are imported by the submodules, not here.
"""
