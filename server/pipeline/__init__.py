"""The steps from a trained model to a release on the fleet, one function each.

    steps         record a training run, package it, publish it, start its rollout
    publishing    publish a model package as a signed TUF release
    withdrawal    withdraw a release: out of the signed targets, never rolled out again
"""
