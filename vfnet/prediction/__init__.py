"""Prediction on new images (vfnet_predict): the view networks of a trained dataset, then fusion.

It sits above fusion because it fuses; one network over a volume is :mod:`vfnet.inference`.
"""
