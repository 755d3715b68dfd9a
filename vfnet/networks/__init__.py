"""Networks: 2D view U-Nets, the Volumetric Fusion Net and the 3D U-Net baseline (no SimpleITK here)."""
