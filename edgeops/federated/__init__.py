"""What server and devices agree on for federated training (no torch, no flwr here).

    config        ClientRecipe: the round config the ServerApp sends each ClientApp
    histograms    how feature histograms travel through federated averaging
"""
