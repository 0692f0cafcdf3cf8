"""Answers drawn from a collection: duplicates, clusters, recommendations, classes, maps.

Each module holds one idea and reads the collection through its public API; none imports
the command line or the server.
"""
