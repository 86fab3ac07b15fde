package onml.flink;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Splits the Python function's output for one batch back into single records.
 *
 * <p>Field 0 contains the results, which go to the main output. Field 1 contains the dead
 * letters, which go to the side output {@link #deadLetters()}.
 */
public final class BatchSplitter extends ProcessFunction<Tuple2<String[], String[]>, String> {

    private static final long serialVersionUID = 1L;
    private static final OutputTag<String> DEAD_LETTERS = new OutputTag<>("dead-letters", Types.STRING);

    /** Returns the side output that carries the dead letters. */
    public static OutputTag<String> deadLetters() {
        return DEAD_LETTERS;
    }

    @Override
    public void processElement(Tuple2<String[], String[]> output, Context ctx, Collector<String> out) {
        if (output.f0 != null) {
            for (String result : output.f0) {
                out.collect(result);
            }
        }
        if (output.f1 != null) {
            for (String deadLetter : output.f1) {
                ctx.output(DEAD_LETTERS, deadLetter);
            }
        }
    }
}
