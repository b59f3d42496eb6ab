package org.apache.spark.shuffle.sluice;

/**
 * Shuffle data is lost, corrupt or unreachable. Readers turn it into a {@code
 * FetchFailedException} so Spark runs the map stage again.
 */
public class SluiceDataLostException extends SluiceException {
  public SluiceDataLostException(String message) {
    super(message);
  }
}
