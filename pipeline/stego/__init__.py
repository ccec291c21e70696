"""STEGO (Hamilton et al., ICLR 2022): head, correspondence loss, kNN pairs, training, CRF."""
