"""Cell-centred crops cut from an image and its labels."""
