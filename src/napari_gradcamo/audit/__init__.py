"""The Grad-CAMO audit: CAM engine, scoring, the batch loop and the results table."""
