"""The POS: plays many designated pharmacies and hospitals sending settlements to the bureau."""
