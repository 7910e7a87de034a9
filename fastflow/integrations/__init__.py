"""Adapters that put fastflow's fused layers into models written with other flow libraries."""
