"""export: torchchat models to ExecuTorch (.pte) and AOTInductor (.pt2)."""
