"""Training, evaluation and LiteRT export of the gender model (Keras, matplotlib).

Imports go from here to classifier.runtime, never back: serving needs none of this.
"""
