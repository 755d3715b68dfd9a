"""Inference: one trained network over a volume (2D per view, 3D by sliding window) and the held-out
prediction of a trained unit. Prediction on new images, with fusion, is :mod:`vfnet.prediction`.
"""
