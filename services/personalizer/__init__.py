"""Personalizer: training jobs that teach a model a subject from 4-7 images, and the adapters they make."""
