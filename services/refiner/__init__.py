"""Refiner service: feedback-conditioned rounds (FABRIC attention conditioning, seed steering)."""
