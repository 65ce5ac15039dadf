"""osteo_edge.demo"""
