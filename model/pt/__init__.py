"""IO page tables (drivers/iommu/generic_pt): formats behind model.domain.DomainOps.

reference.py is the plain-Python table every format is checked against.
"""
