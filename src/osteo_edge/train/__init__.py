"""osteo_edge.train"""
