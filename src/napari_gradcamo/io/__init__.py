"""Reading images and labels, writing tables and exports."""
