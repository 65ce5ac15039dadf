"""osteo_edge.edge_runtime"""
