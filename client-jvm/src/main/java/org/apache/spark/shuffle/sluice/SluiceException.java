package org.apache.spark.shuffle.sluice;

/** A failure reported by the native Sluice client. */
public class SluiceException extends RuntimeException {
  public SluiceException(String message) {
    super(message);
  }
}
