"""osteo_edge.compress"""
