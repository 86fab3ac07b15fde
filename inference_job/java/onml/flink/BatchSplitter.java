package onml.flink;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Turns the Python function's answer to one batch back into single records.
 *
 * <p>Field 0 holds the results, which go to the main output; field 1 holds dead letters,
 * which go to the side output {@link #deadLetters()}.
 */
public final class BatchSplitter extends ProcessFunction<Tuple2<String[], String[]>, String> {

    private static final long serialVersionUID = 1L;
    private static final OutputTag<String> DEAD_LETTERS = new OutputTag<>("dead-letters", Types.STRING);

    /** The side output that carries the dead letters. */
    public static OutputTag<String> deadLetters() {
        return DEAD_LETTERS;
    }

    @Override
    public void processElement(Tuple2<String[], String[]> answer, Context ctx, Collector<String> out) {
        if (answer.f0 != null) {
            for (String result : answer.f0) {
                out.collect(result);
            }
        }
        if (answer.f1 != null) {
            for (String deadLetter : answer.f1) {
                ctx.output(DEAD_LETTERS, deadLetter);
            }
        }
    }
}
