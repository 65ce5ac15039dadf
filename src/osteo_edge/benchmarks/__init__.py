"""osteo_edge.benchmarks"""
