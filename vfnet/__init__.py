"""vfnet: 2D view networks fused by a Volumetric Fusion Net (Xia et al., MICCAI 2018).

Not for clinical use.
"""

__version__ = "0.1.0"
