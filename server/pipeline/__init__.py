"""The steps from a trained model to a release on the fleet, one function each.

    publishing    publish a model package as a signed TUF release
"""
