"""osteo_edge.export"""
