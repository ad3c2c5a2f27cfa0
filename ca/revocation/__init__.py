"""revocation"""
