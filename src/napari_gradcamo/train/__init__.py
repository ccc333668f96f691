"""Training classifiers on cell crops: field lists, the loop, the Grad-CAMO regulariser."""
