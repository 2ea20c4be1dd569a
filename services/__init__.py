"""PHiLIP services: each package has server.py (servicer + bootstrap) and its domain modules."""
