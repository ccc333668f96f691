"""Which image channel feeds each model channel: by name, in order for unnamed channels, or as the user maps them."""

from __future__ import annotations

from typing import Sequence

from napari_gradcamo.io.images import ImageError

#: Channel names a reader gives unnamed channels (``ch0``, ``ch1``, …).
_GENERIC_NAME = "ch"


def resolve_channels(image_names: Sequence[str], model_names: Sequence[str], explicit: Sequence[int] | None = None) -> list[int]:
    """Image channel index for each model channel: explicit, else by name, else in order for unnamed channels.

    Parameters
    ----------
    image_names : sequence of str
        The image's channel names.
    model_names : sequence of str
        The channels the model was trained on, in its input order.
    explicit : sequence of int, optional
        The image channel for each model channel, given by the user (``--channel-map``).

    Returns
    -------
    list of int
        One image channel index per model channel.

    Raises
    ------
    ImageError
        When the names do not match and no (valid) map is given; the message names the fix.

    Examples
    --------
    >>> resolve_channels(["AGP", "RNA", "ER", "DNA"], ["DNA", "ER", "RNA"])
    [3, 2, 1]
    """
    n_img, n_mod = len(image_names), len(model_names)
    if explicit is not None:
        explicit = [int(i) for i in explicit]
        if len(explicit) != n_mod or any(i < 0 or i >= n_img for i in explicit):
            raise ImageError(
                f"The channel map {explicit} must give one image channel (0..{n_img - 1}) for each of the "
                f"model's {n_mod} channels ({', '.join(model_names)})."
            )
        return explicit
    lower = [n.lower() for n in image_names]
    if all(m.lower() in lower for m in model_names):
        return [lower.index(m.lower()) for m in model_names]
    unnamed = all(n.lower().startswith(_GENERIC_NAME) and n[len(_GENERIC_NAME):].isdigit() for n in image_names)
    if unnamed and n_img == n_mod:
        return list(range(n_mod))
    if n_img != n_mod:
        raise ImageError(
            f"The model expects {n_mod} channels ({', '.join(model_names)}) but the image has {n_img} "
            f"({', '.join(image_names)}); give an image with those stains or a channel map."
        )
    missing = [m for m in model_names if m.lower() not in lower]
    raise ImageError(
        f"The image's channels ({', '.join(image_names)}) do not name the model's channels "
        f"{', '.join(missing)}; map them explicitly (channel_map / --channel-map)."
    )

