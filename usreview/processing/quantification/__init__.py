"""Quantification processors: spectral Doppler indices, M-mode motion, 3D volume."""
