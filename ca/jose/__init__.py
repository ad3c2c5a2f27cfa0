"""jose"""
