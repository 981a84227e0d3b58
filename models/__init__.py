"""Everything that touches weights: featurisation,
architectures, fine-tuning, export, gate, registry, serving.

Empty until the serving issue lands; the package exists
so the room and its import rules are fixed early.
"""
