"""Preprocessing: arrays written from the raw dataset, the reader of those arrays, and plan_and_preprocess.

The package imports nothing itself, so importing the reader (``data``) does not load SimpleITK.
"""
